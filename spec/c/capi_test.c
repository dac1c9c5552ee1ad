/*
** capi_test: drives threadlocal's C API directly, from several threads, and
** checks it against Lua states on the same threads.  Prints one TAP line per
** check; exits non-zero if any failed.
*/
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define CTEST_NAME "capi"
#include "ctest.h"


/* Destructor calls, counted per pointer. */
static atomic_int dtor_calls[64];
static int dtor_tags[64];

static void count_dtor(void *p) {
  atomic_fetch_add(&dtor_calls[(int *)p - dtor_tags], 1);
}

static int calls(int tag) { return atomic_load(&dtor_calls[tag]); }



static void test_arguments(void) {
  threadlocal_shared *a, *b;
  threadlocal_value v;
  check(threadlocal_shared_open(NULL, 1, &a) == THREADLOCAL_ERRARG &&
            threadlocal_shared_open("x", 1, NULL) == THREADLOCAL_ERRARG,
        "open refuses NULL arguments (NULL is a name only with length 0)");
  check(threadlocal_shared_open("args", 4, &a) == THREADLOCAL_OK &&
            threadlocal_shared_open("args", 4, &b) == THREADLOCAL_OK && a == b,
        "open finds the same shared local by name");
  check(threadlocal_shared_open("args\0x", 6, &b) == THREADLOCAL_OK && a != b,
        "names are binary-safe");
  check(threadlocal_set_integer(NULL, "k", 1) == THREADLOCAL_ERRARG &&
            threadlocal_set_integer(a, NULL, 1) == THREADLOCAL_ERRARG &&
            threadlocal_get(a, NULL, &v) == THREADLOCAL_ERRARG &&
            threadlocal_get(a, "k", NULL) == THREADLOCAL_ERRARG &&
            threadlocal_set_string(a, "k", NULL, 3) == THREADLOCAL_ERRARG &&
            threadlocal_clear(NULL) == THREADLOCAL_ERRARG,
        "setters and getters refuse NULL arguments");
  check(threadlocal_get(a, "absent", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_NIL,
        "an absent field reads as nil");
  check(threadlocal_delete(a, "absent") == THREADLOCAL_OK, "deleting an absent field is fine");
  check(threadlocal_id() >= 1 && threadlocal_id() == threadlocal_id(),
        "the thread id is >= 1 and stable");
}

static void test_c_to_lua(void) {
  threadlocal_shared *sh;
  lua_State *L = new_state(NULL);
  int ok;
  threadlocal_shared_open("c2lua", 5, &sh);
  threadlocal_set_boolean(sh, "b", 1);
  threadlocal_set_integer(sh, "i", 42);
  threadlocal_set_float(sh, "f", 0.5);
  threadlocal_set_string(sh, "s", "a\0b", 3);
  threadlocal_set_pointer(sh, "p", &dtor_tags[0], NULL);
  lua_pushlightuserdata(L, &dtor_tags[0]);
  lua_setglobal(L, "P");
  ok = run(L,
           "local sh = threadlocal.shared('c2lua')\n"
           "assert(sh.b == true and sh.i == 42 and sh.f == 0.5)\n"
           "assert(sh.s == 'a\\0b' and sh.p == P)\n"
           "if math.type then assert(math.type(sh.i) == 'integer' and math.type(sh.f) == 'float') end\n");
  check(ok, "values set in C are the values Lua reads");
  ok = run(L,
           "local sh = threadlocal.shared('c2lua')\n"
           "sh.b, sh.i, sh.f, sh.s, sh.t = false, 7, 1.5, 'x\\0y\\0', { 1 }\n"
           "sh.p = nil\n");
  {
    threadlocal_value b, i, f, s, t, p;
    threadlocal_get(sh, "b", &b);
    threadlocal_get(sh, "i", &i);
    threadlocal_get(sh, "f", &f);
    threadlocal_get(sh, "s", &s);
    threadlocal_get(sh, "t", &t);
    threadlocal_get(sh, "p", &p);
    check(ok && b.type == THREADLOCAL_BOOLEAN && !b.u.boolean && i.type == THREADLOCAL_INTEGER &&
              i.u.integer == 7 && f.type == THREADLOCAL_FLOAT && f.u.number == 1.5 &&
              s.type == THREADLOCAL_STRING && s.u.string.len == 4 &&
              memcmp(s.u.string.ptr, "x\0y\0", 5) == 0 && t.type == THREADLOCAL_TABLE &&
              p.type == THREADLOCAL_NIL,
          "values set in Lua are the values C reads");
  }
  lua_close(L);
}

/* Sets a pointer with a counting destructor, does `undo`, and checks the
** destructor ran exactly once, and not before. */
static void dtor_case(int tag, const char *what, void (*undo)(threadlocal_shared *, lua_State *)) {
  threadlocal_shared *sh;
  lua_State *L = new_state(NULL);
  char msg[128];
  int before;
  threadlocal_shared_open("dtor", 4, &sh);
  threadlocal_set_pointer(sh, "p", &dtor_tags[tag], count_dtor);
  before = calls(tag);
  undo(sh, L);
  snprintf(msg, sizeof msg, "a destructor runs exactly once on %s", what);
  check(before == 0 && calls(tag) == 1, msg);
  lua_close(L);
  threadlocal_clear(sh);
  snprintf(msg, sizeof msg, "a destructor that ran on %s never runs again", what);
  check(calls(tag) == 1, msg);
}

static void undo_c_overwrite(threadlocal_shared *sh, lua_State *L) {
  (void)L;
  threadlocal_set_integer(sh, "p", 1);
}
static void undo_c_delete(threadlocal_shared *sh, lua_State *L) {
  (void)L;
  threadlocal_delete(sh, "p");
}
static void undo_c_clear(threadlocal_shared *sh, lua_State *L) {
  (void)L;
  threadlocal_clear(sh);
}
static void undo_release(threadlocal_shared *sh, lua_State *L) {
  (void)sh;
  (void)L;
  threadlocal_release();
}
static void undo_lua_overwrite(threadlocal_shared *sh, lua_State *L) {
  (void)sh;
  /* a copy of the pointer carries no destructor */
  run(L, "local sh = threadlocal.shared('dtor'); sh.copy = sh.p; sh.copy = nil; sh.p = 'x'");
}
static void undo_lua_delete(threadlocal_shared *sh, lua_State *L) {
  (void)sh;
  run(L, "threadlocal.shared('dtor').p = nil");
}
static void undo_lua_clear(threadlocal_shared *sh, lua_State *L) {
  (void)sh;
  run(L, "threadlocal.clear(threadlocal.shared('dtor'))");
}

/* ---- several threads ---- */

#define NTHREADS 8

static pthread_barrier_t barrier;
static uint64_t thread_ids[NTHREADS];
static int thread_ok[NTHREADS];

static void *worker(void *p) {
  int me = (int)(intptr_t)p, ok = 1;
  threadlocal_shared *sh;
  threadlocal_value v;
  char s[32], code[256];
  lua_State *L;
  threadlocal_shared_open("workers", 7, &sh);
  snprintf(s, sizeof s, "worker %d", me);
  ok &= threadlocal_set_integer(sh, "index", me) == THREADLOCAL_OK;
  ok &= threadlocal_set_string(sh, "name", s, strlen(s)) == THREADLOCAL_OK;
  ok &= threadlocal_set_pointer(sh, "ctx", &dtor_tags[16 + me], count_dtor) == THREADLOCAL_OK;
  thread_ids[me] = threadlocal_id();
  pthread_barrier_wait(&barrier); /* every thread has set its values */
  ok &= threadlocal_get(sh, "index", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_INTEGER &&
        v.u.integer == me;
  ok &= threadlocal_get(sh, "name", &v) == THREADLOCAL_OK && strcmp(v.u.string.ptr, s) == 0;
  /* a short-lived state on this worker sees this thread's context */
  L = new_state(NULL);
  snprintf(code, sizeof code,
           "local sh = threadlocal.shared('workers')\n"
           "assert(sh.index == %d and sh.name == 'worker %d', sh.name)\n"
           "assert(type(sh.ctx) == 'userdata')\n"
           "assert(threadlocal.id() == %llu)\n"
           "sh.from_lua = sh.index * 10\n",
           me, me, (unsigned long long)thread_ids[me]);
  ok &= run(L, code);
  lua_close(L);
  ok &= threadlocal_get(sh, "from_lua", &v) == THREADLOCAL_OK && v.u.integer == me * 10;
  ok &= calls(16 + me) == 0;
  pthread_barrier_wait(&barrier); /* nobody has exited yet */
  thread_ok[me] = ok;
  return NULL;
}

static void test_threads(void) {
  pthread_t th[NTHREADS];
  int i, ok = 1, distinct = 1, j;
  pthread_barrier_init(&barrier, NULL, NTHREADS);
  for (i = 0; i < NTHREADS; i++) pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
  for (i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&barrier);
  for (i = 0; i < NTHREADS; i++) {
    ok &= thread_ok[i];
    for (j = 0; j < i; j++) distinct &= thread_ids[i] != thread_ids[j];
  }
  check(ok, "8 threads each see only their own values, from C and from Lua");
  check(distinct, "8 threads have distinct ids");
  ok = 1;
  for (i = 0; i < NTHREADS; i++) ok &= calls(16 + i) == 1;
  check(ok, "each thread's destructor ran exactly once when it exited");
}

static void *set_and_exit(void *p) {
  threadlocal_shared *sh;
  (void)p;
  threadlocal_shared_open("exit", 4, &sh);
  threadlocal_set_pointer(sh, "p", &dtor_tags[40], count_dtor);
  threadlocal_set_pointer(sh, "q", &dtor_tags[41], count_dtor);
  return NULL;
}

static void *read_defaults(void *p) {
  threadlocal_shared *sh;
  threadlocal_value v;
  threadlocal_shared_open("with defaults", 13, &sh);
  *(int *)p = threadlocal_get(sh, "n", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_INTEGER &&
              v.u.integer == 5;
  return NULL;
}

static void test_lifetimes(void) {
  pthread_t th;
  threadlocal_shared *sh;
  threadlocal_value v;
  lua_State *L;
  uint64_t id;
  int ok = 0;

  pthread_create(&th, NULL, set_and_exit, NULL);
  pthread_join(th, NULL);
  check(calls(40) == 1 && calls(41) == 1, "an exiting thread runs its destructors once");

  L = new_state(NULL);
  ok = run(L, "threadlocal.shared('with defaults', { n = 5 })");
  pthread_create(&th, NULL, read_defaults, &ok);
  pthread_join(th, NULL);
  check(ok, "defaults given in Lua are what C reads on a new thread");

  /* release: shared fields freed, a new id, Local values of the thread purged */
  threadlocal_shared_open("release", 7, &sh);
  threadlocal_set_string(sh, "s", "x", 1);
  id = threadlocal_id();
  ok = run(L,
           "collected = false\n"
           "tl = threadlocal.new()\n"
           "coroutine.wrap(function()\n" /* off the main stack: see spec/support.lua */
           "  tl.v = setmetatable({}, { __gc = function() collected = true end })\n"
           "  if newproxy then\n"
           "    local p = newproxy(true); getmetatable(p).__gc = function() collected = true end\n"
           "    tl.v = p\n"
           "  end\n"
           "end)()\n");
  threadlocal_release();
  threadlocal_get(sh, "s", &v);
  check(v.type == THREADLOCAL_NIL && threadlocal_id() != id && threadlocal_id() > id,
        "release frees the thread's shared fields and gives it a new id");
  ok &= run(L,
            "assert(tl.v == nil, 'a released thread still sees its Local values')\n"
            "collectgarbage(); collectgarbage()\n"
            "assert(collected, 'released Local value not collected')\n");
  check(ok, "release makes the thread's Local values garbage, collected within two cycles");
  lua_close(L);
}

/* Snapshots: a job's context captured on one thread, installed on a
** worker that has its own, then the worker's own put back. */
static threadlocal_snapshot *handed;

static void *submitter(void *p) {
  threadlocal_shared *sh;
  (void)p;
  threadlocal_shared_open("request", 7, &sh);
  threadlocal_set_string(sh, "user", "alice", 5);
  threadlocal_set_pointer(sh, "conn", &dtor_tags[50], count_dtor);
  if (threadlocal_snapshot_capture(NULL, 0, &handed) != THREADLOCAL_OK) handed = NULL;
  return NULL; /* its exit runs conn's destructor once (tag 50) */
}

static void *snapshot_worker(void *p) {
  int *ok = (int *)p;
  threadlocal_shared *sh;
  threadlocal_snapshot *own, *job;
  threadlocal_value v;
  threadlocal_shared_open("request", 7, &sh);
  threadlocal_set_string(sh, "user", "worker", 6);
  threadlocal_set_pointer(sh, "conn", &dtor_tags[51], count_dtor);
  ok[0] = threadlocal_snapshot_install(handed, &own) == THREADLOCAL_OK &&
          threadlocal_get(sh, "user", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_STRING &&
          strcmp(v.u.string.ptr, "alice") == 0 &&
          threadlocal_get(sh, "conn", &v) == THREADLOCAL_OK && v.u.pointer == &dtor_tags[50] &&
          calls(51) == 0;
  /* the job sets a pointer of its own; it goes with the job's snapshot */
  threadlocal_set_pointer(sh, "tmp", &dtor_tags[52], count_dtor);
  ok[1] = threadlocal_snapshot_install(own, &job) == THREADLOCAL_OK &&
          threadlocal_get(sh, "user", &v) == THREADLOCAL_OK && strcmp(v.u.string.ptr, "worker") == 0 &&
          threadlocal_get(sh, "tmp", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_NIL &&
          calls(51) == 0 && calls(52) == 0;
  threadlocal_snapshot_free(job);
  ok[2] = calls(52) == 1 && calls(50) == 1 && calls(51) == 0;
  return NULL; /* its exit runs its own conn's destructor (tag 51) */
}

static void test_snapshots(void) {
  pthread_t th;
  threadlocal_snapshot *s;
  int ok[3] = {0, 0, 0};
  pthread_create(&th, NULL, submitter, NULL);
  pthread_join(th, NULL);
  check(handed != NULL && calls(50) == 1,
        "a snapshot outlives the thread that captured it; its pointers carry no destructor");
  pthread_create(&th, NULL, snapshot_worker, ok);
  pthread_join(th, NULL);
  check(ok[0], "a worker installs a snapshot and reads the submitter's fields");
  check(ok[1], "installing what was handed back puts the worker's own fields back");
  check(ok[2], "freeing the job's snapshot runs the job's destructors, once, and no others");
  check(calls(51) == 1, "the worker's own destructor ran once, at its exit");
  check(threadlocal_snapshot_install(NULL, &s) == THREADLOCAL_ERRARG &&
        threadlocal_snapshot_capture(NULL, 1, &s) == THREADLOCAL_ERRARG &&
        threadlocal_snapshot_capture(NULL, 0, NULL) == THREADLOCAL_ERRARG,
        "snapshot functions refuse bad arguments");
  threadlocal_snapshot_free(NULL);
}

/* A shared local named twice in one capture: installing it and then what
** it handed back leaves the worker with its own fields again. */
static void test_snapshot_twice(void) {
  threadlocal_shared *sh, *two[2];
  threadlocal_snapshot *snap = NULL, *own = NULL, *job = NULL;
  threadlocal_value v;
  int ok;
  threadlocal_shared_open("twice", 5, &sh);
  two[0] = two[1] = sh;
  threadlocal_set_string(sh, "user", "job", 3);
  ok = threadlocal_snapshot_capture(two, 2, &snap) == THREADLOCAL_OK;
  threadlocal_set_string(sh, "user", "own", 3);
  threadlocal_set_pointer(sh, "conn", &dtor_tags[53], count_dtor);
  ok = ok && threadlocal_snapshot_install(snap, &own) == THREADLOCAL_OK &&
       threadlocal_get(sh, "user", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_STRING &&
       strcmp(v.u.string.ptr, "job") == 0 &&
       threadlocal_snapshot_install(own, &job) == THREADLOCAL_OK;
  threadlocal_snapshot_free(job);
  check(ok && threadlocal_get(sh, "user", &v) == THREADLOCAL_OK &&
        v.type == THREADLOCAL_STRING && strcmp(v.u.string.ptr, "own") == 0 &&
        threadlocal_get(sh, "conn", &v) == THREADLOCAL_OK && v.u.pointer == &dtor_tags[53] &&
        calls(53) == 0,
        "a shared local named twice in a snapshot: the worker's own fields come back");
  threadlocal_clear(sh);
  check(calls(53) == 1, "and its destructor runs once, when they are cleared");
}

/* Destructors that clear their shared local, run while a scope restores. */
static threadlocal_shared *clearing;

static void clearing_dtor(void *p) {
  count_dtor(p);
  threadlocal_clear(clearing);
}

static int set_clearing(lua_State *L) {
  (void)L;
  threadlocal_set_pointer(clearing, "a", &dtor_tags[54], clearing_dtor);
  threadlocal_set_pointer(clearing, "b", &dtor_tags[55], clearing_dtor);
  threadlocal_set_pointer(clearing, "c", &dtor_tags[56], clearing_dtor);
  return 0;
}

static void test_scope_dtors(void) {
  lua_State *L = new_state(NULL);
  int ok;
  threadlocal_shared_open("clearing", 8, &clearing);
  lua_register(L, "set_clearing", set_clearing);
  ok = run(L, "local sh = threadlocal.shared('clearing')\n"
              "sh.keep = 1\n"
              "local s = threadlocal.scope(sh, { a = 1, b = 2, c = 3 })\n"
              "set_clearing()\n"
              "s:close()\n"
              "assert(sh.a == nil and sh.b == nil and sh.c == nil)\n");
  check(ok && calls(54) == 1 && calls(55) == 1 && calls(56) == 1,
        "a scope restores, then runs the destructors of what it replaced, which may clear");
  lua_close(L);
  threadlocal_clear(clearing);
}

/* Called by a Local's init: threadlocal_release() there does nothing. */
static int release_codes[2];
static uint64_t release_ids[2];

static int c_release(lua_State *L) {
  int i = (int)luaL_checkinteger(L, 1);
  release_ids[i] = threadlocal_id();
  release_codes[i] = threadlocal_release();
  return 0;
}

static void test_release_in_init(void) {
  lua_State *L = new_state(NULL);
  uint64_t before = threadlocal_id();
  int ok;
  lua_register(L, "c_release", c_release);
  ok = run(L, "local tl = threadlocal.new(function(self) c_release(0); self.x = 1 end)\n"
              "assert(tl.x == 1)\n"
              "c_release(1)\n");
  check(ok && release_codes[0] == THREADLOCAL_ERRARG && release_ids[0] == before,
        "threadlocal_release inside a Local's init does nothing and returns THREADLOCAL_ERRARG");
  check(release_codes[1] == THREADLOCAL_OK && threadlocal_id() != before,
        "and releases as always outside it");
  lua_close(L);
}

/* ---- any key, any depth: nodes, iteration, defaults ---- */

#define S(x) threadlocal_string(x)
#define I(x) threadlocal_integer(x)

/* Runs code with the shared local `name` as global sh; 1 if it ran. */
static int run_sh(lua_State *L, const char *name, const char *code) {
  char buf[4096];
  snprintf(buf, sizeof buf, "local sh = threadlocal.shared('%s')\n%s", name, code);
  return run(L, buf);
}

static int is_int(const threadlocal_value *v, int64_t i) {
  return v->type == THREADLOCAL_INTEGER && v->u.integer == i;
}

static int is_str(const threadlocal_value *v, const char *s, size_t len) {
  return v->type == THREADLOCAL_STRING && v->u.string.len == len &&
         memcmp(v->u.string.ptr, s, len) == 0 && v->u.string.ptr[len] == '\0';
}

/* get of one key below node. */
static int get1(const threadlocal_node *n, threadlocal_value k, threadlocal_value *out) {
  return threadlocal_node_get(n, &k, 1, out);
}

static void test_open_cstr(void) {
  threadlocal_shared *a = NULL, *b = NULL, *c = NULL;
  check(threadlocal_shared_open_cstr(NULL, &a) == THREADLOCAL_ERRARG &&
            threadlocal_shared_open_cstr("x", NULL) == THREADLOCAL_ERRARG && a == NULL,
        "open_cstr refuses NULL arguments");
  check(threadlocal_shared_open_cstr("request", &a) == THREADLOCAL_OK &&
            threadlocal_shared_open("request", 7, &b) == THREADLOCAL_OK && a == b &&
            threadlocal_shared_open("reques", 6, &c) == THREADLOCAL_OK && c != a,
        "open_cstr opens the shared local the counted open names with strlen");
  check(threadlocal_shared_open_cstr("", &c) == THREADLOCAL_OK &&
            threadlocal_shared_open(NULL, 0, &b) == THREADLOCAL_OK && b == c,
        "open_cstr of \"\" is the empty name");
}

static void test_strerror(void) {
  int i, j, ok = 1;
  for (i = THREADLOCAL_OK; i <= THREADLOCAL_ERRDEFAULTS; i++)
    for (j = THREADLOCAL_OK; j < i; j++)
      ok &= strcmp(threadlocal_strerror(i), threadlocal_strerror(j)) != 0;
  check(ok && strcmp(threadlocal_strerror(99), "unknown code") == 0 &&
            strcmp(threadlocal_strerror(-1), "unknown code") == 0,
        "strerror names every code apart, and unknown ones as such");
}

/* Every key kind, from C to Lua and back, and the keys that are refused. */
static void test_keys(void) {
  static const char longkey[] = "a key longer than fifteen bytes";
  threadlocal_shared *sh;
  threadlocal_node root, zero, n;
  threadlocal_value k, v, bad[9];
  lua_State *L = new_state(NULL);
  int ok, i, rc;
  threadlocal_shared_open_cstr("keys", &sh);
  threadlocal_root(sh, &root);
  ok = threadlocal_node_set(&root, (k = threadlocal_boolean(1), &k), (v = I(1), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_boolean(0), &k), (v = I(2), &v)) == 0 &&
       threadlocal_node_set(&root, (k = I(-5), &k), (v = I(3), &v)) == 0 &&
       threadlocal_node_set(&root, (k = I(INT64_MAX), &k), (v = I(4), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_float(2.5), &k), (v = I(5), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_float(2.0), &k), (v = I(6), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_lstring("a\0b", 3), &k), (v = I(7), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_lstring(NULL, 0), &k), (v = I(8), &v)) == 0 &&
       threadlocal_node_set(&root, (k = S(longkey), &k), (v = I(9), &v)) == 0 &&
       threadlocal_node_set(&root, (k = threadlocal_float(-INFINITY), &k), (v = I(10), &v)) == 0;
  check(ok, "node_set takes boolean, integer, float, string, empty and long string keys");
  ok = run_sh(L, "keys",
              "assert(sh[true] == 1 and sh[false] == 2 and sh[-5] == 3)\n"
              "assert(sh[math.maxinteger or 2^63] == 4 or not math.maxinteger)\n"
              "assert(sh[2.5] == 5 and sh[2] == 6 and sh['a\\0b'] == 7 and sh[''] == 8)\n"
              "assert(sh['a key longer than fifteen bytes'] == 9 and sh[-1/0] == 10)\n"
              "sh[true], sh[7], sh[0.25], sh['x\\0'], sh[-1/0] = 'T', 'seven', 'q', 'z', nil\n");
  check(ok, "Lua reads what C stored under every key kind (2.0 is the key 2)");
  ok = get1(&root, threadlocal_boolean(1), &v) == 0 && is_str(&v, "T", 1) &&
       get1(&root, I(7), &v) == 0 && is_str(&v, "seven", 5) &&
       get1(&root, threadlocal_float(7.0), &v) == 0 && is_str(&v, "seven", 5) &&
       get1(&root, threadlocal_float(0.25), &v) == 0 && is_str(&v, "q", 1) &&
       get1(&root, threadlocal_lstring("x\0", 2), &v) == 0 && is_str(&v, "z", 1) &&
       get1(&root, threadlocal_lstring("x", 1), &v) == 0 && v.type == THREADLOCAL_NIL &&
       get1(&root, threadlocal_float(-INFINITY), &v) == 0 && v.type == THREADLOCAL_NIL &&
       get1(&root, I(2), &v) == 0 && is_int(&v, 6);
  check(ok, "C reads what Lua stored under every key kind");
  ok = threadlocal_node_delete(&root, (k = threadlocal_boolean(0), &k)) == 0 &&
       threadlocal_node_delete(&root, (k = threadlocal_float(2.0), &k)) == 0 &&
       threadlocal_node_delete(&root, (k = I(12345), &k)) == 0 &&
       run_sh(L, "keys", "assert(sh[false] == nil and sh[2] == nil and sh[2.5] == 5)");
  check(ok, "node_delete removes any key kind; an absent one is fine");

  /* refused keys */
  memset(bad, 0, sizeof bad);
  bad[0].type = THREADLOCAL_NIL;
  bad[1] = threadlocal_float(NAN);
  bad[2] = threadlocal_pointer(&i);
  bad[3].type = THREADLOCAL_TABLE;
  bad[4] = threadlocal_lstring(NULL, 3);
  bad[5] = threadlocal_lstring("x", (size_t)THREADLOCAL_MAXLEN + 1);
  bad[6] = threadlocal_lstring("x", SIZE_MAX);
  bad[7].type = (threadlocal_type)99;
  bad[8] = S("fine");
  ok = 1;
  for (i = 0; i < 8; i++) {
    threadlocal_value path[2];
    path[0] = bad[i];
    path[1] = S("x");
    v = I(1);
    ok &= threadlocal_node_set(&root, &bad[i], &v) == THREADLOCAL_ERRARG;
    ok &= threadlocal_node_set_pointer(&root, &bad[i], &i, NULL) == THREADLOCAL_ERRARG;
    ok &= threadlocal_node_delete(&root, &bad[i]) == THREADLOCAL_ERRARG;
    ok &= threadlocal_node_newtable(&root, &bad[i], &n) == THREADLOCAL_ERRARG;
    ok &= threadlocal_node_get(&root, &bad[i], 1, &v) == THREADLOCAL_ERRARG;
    ok &= threadlocal_node_child(&root, &bad[i], 1, &n) == THREADLOCAL_ERRARG;
    /* a bad key is refused even where the data ends before it */
    path[0] = S("absent");
    path[1] = bad[i];
    ok &= threadlocal_node_get(&root, path, 2, &v) == THREADLOCAL_ERRARG;
  }
  check(ok, "NIL, NaN, pointer, table, unknown-type keys and bad string keys are bad arguments");
  memset(&zero, 0, sizeof zero);
  v = I(1);
  k = S("k");
  ok = threadlocal_node_set(NULL, &k, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_set(&root, NULL, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_set(&root, &k, NULL) == THREADLOCAL_ERRARG &&
       threadlocal_node_set(&zero, &k, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_set_pointer(NULL, &k, &i, NULL) == THREADLOCAL_ERRARG &&
       threadlocal_node_delete(NULL, &k) == THREADLOCAL_ERRARG &&
       threadlocal_node_delete(&zero, &k) == THREADLOCAL_ERRARG &&
       threadlocal_node_newtable(NULL, &k, &n) == THREADLOCAL_ERRARG &&
       threadlocal_node_newtable(&zero, &k, &n) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(NULL, &k, 1, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&root, NULL, 1, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&root, &k, 0, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&root, &k, SIZE_MAX, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&root, &k, THREADLOCAL_MAXDEPTH + 2, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&root, &k, 1, NULL) == THREADLOCAL_ERRARG &&
       threadlocal_node_get(&zero, &k, 1, &v) == THREADLOCAL_ERRARG &&
       threadlocal_node_child(NULL, &k, 1, &n) == THREADLOCAL_ERRARG &&
       threadlocal_node_child(&root, &k, 0, &n) == THREADLOCAL_ERRARG &&
       threadlocal_node_child(&root, &k, SIZE_MAX, &n) == THREADLOCAL_ERRARG &&
       threadlocal_node_child(&root, &k, 1, NULL) == THREADLOCAL_ERRARG &&
       threadlocal_root(NULL, &n) == THREADLOCAL_ERRARG &&
       threadlocal_root(sh, NULL) == THREADLOCAL_ERRARG;
  check(ok, "node calls refuse NULL, never-made nodes, and path lengths 0 or past the bound");
  /* bad values */
  ok = 1;
  k = S("k");
  for (i = 0; i < 3; i++) {
    v = i == 0 ? threadlocal_lstring(NULL, 1)
               : threadlocal_lstring("x", i == 1 ? (size_t)THREADLOCAL_MAXLEN + 1 : SIZE_MAX);
    ok &= threadlocal_node_set(&root, &k, &v) == THREADLOCAL_ERRARG;
  }
  v.type = THREADLOCAL_TABLE;
  ok &= threadlocal_node_set(&root, &k, &v) == THREADLOCAL_ERRARG;
  v.type = (threadlocal_type)99;
  ok &= threadlocal_node_set(&root, &k, &v) == THREADLOCAL_ERRARG;
  v = threadlocal_lstring(NULL, 0);
  ok &= threadlocal_node_set(&root, &k, &v) == THREADLOCAL_OK &&
        get1(&root, S("k"), &v) == 0 && is_str(&v, "", 0);
  check(ok, "node_set refuses bad strings, TABLE and unknown types; NULL with 0 is \"\"");
  rc = run_sh(L, "keys", "assert(sh.k == '')");
  check(rc, "and nothing of the refused calls reached the fields");
  threadlocal_clear(sh);
  lua_close(L);
}

/* Every value kind, both ways, in a table at depth 1 and at the bound. */
static const char *fill_lua =
  "local function fill(t) t.b, t.i, t.f, t.s, t.p, t.t, t[1] = true, -42, 0.5, 'a\\0b', P, {}, 'one' end\n";

static int check_kinds(const threadlocal_node *n) {
  threadlocal_value v;
  int ok = 1;
  ok &= get1(n, S("b"), &v) == 0 && v.type == THREADLOCAL_BOOLEAN && v.u.boolean == 1;
  ok &= get1(n, S("i"), &v) == 0 && is_int(&v, -42);
  ok &= get1(n, S("f"), &v) == 0 && v.type == THREADLOCAL_FLOAT && v.u.number == 0.5;
  ok &= get1(n, S("s"), &v) == 0 && is_str(&v, "a\0b", 3);
  ok &= get1(n, S("p"), &v) == 0 && v.type == THREADLOCAL_POINTER && v.u.pointer == &dtor_tags[60];
  ok &= get1(n, S("t"), &v) == 0 && v.type == THREADLOCAL_TABLE;
  ok &= get1(n, I(1), &v) == 0 && is_str(&v, "one", 3);
  ok &= get1(n, S("none"), &v) == 0 && v.type == THREADLOCAL_NIL;
  return ok;
}

/* Sets every kind in n's table; a table at "t" unless n is at the bound. */
static int fill_kinds(const threadlocal_node *n, int table) {
  threadlocal_value k, v;
  int ok = 1;
  ok &= threadlocal_node_set(n, (k = S("b"), &k), (v = threadlocal_boolean(7), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("i"), &k), (v = I(-42), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("f"), &k), (v = threadlocal_float(0.5), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("s"), &k), (v = threadlocal_lstring("a\0b", 3), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("p"), &k), (v = threadlocal_pointer(&dtor_tags[60]), &v)) == 0;
  if (table) ok &= threadlocal_node_newtable(n, (k = S("t"), &k), NULL) == 0;
  ok &= threadlocal_node_set(n, (k = I(1), &k), (v = S("one"), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("gone"), &k), (v = I(1), &v)) == 0;
  ok &= threadlocal_node_set(n, (k = S("gone"), &k), (v.type = THREADLOCAL_NIL, &v)) == 0;
  return ok;
}

static const char *check_lua =
  "local function check(t)\n"
  "  assert(t.b == true and t.i == -42 and t.f == 0.5 and t.s == 'a\\0b' and t.p == P)\n"
  "  assert(type(t.t) == 'userdata' and next(threadlocal.fields(t.t)) == nil and t[1] == 'one')\n"
  "  assert(t.gone == nil)\n"
  "  if math.type then assert(math.type(t.i) == 'integer' and math.type(t.f) == 'float') end\n"
  "end\n";

static void test_values(void) {
  threadlocal_shared *sh;
  threadlocal_node root, n, deep[THREADLOCAL_MAXDEPTH + 1];
  threadlocal_value path[THREADLOCAL_MAXDEPTH + 2], v, k;
  lua_State *L = new_state(NULL);
  char code[2048];
  int ok, i;
  lua_pushlightuserdata(L, &dtor_tags[60]);
  lua_setglobal(L, "P");
  threadlocal_shared_open_cstr("kinds", &sh);
  threadlocal_root(sh, &root);
  /* Lua -> C, depth 1 */
  snprintf(code, sizeof code, "%s sh.t = {}; fill(sh.t)", fill_lua);
  ok = run_sh(L, "kinds", code) && threadlocal_node_child(&root, (k = S("t"), &k), 1, &n) == 0 &&
       check_kinds(&n);
  path[0] = S("t");
  path[1] = S("s");
  ok &= threadlocal_node_get(&root, path, 2, &v) == 0 && is_str(&v, "a\0b", 3);
  check(ok, "every value kind set in Lua at depth 1 is what C reads (by node and by path)");
  /* Lua -> C, at the bound: the table at depth THREADLOCAL_MAXDEPTH */
  snprintf(code, sizeof code,
           "%s local top = {}; local d = top\n"
           "for i = 2, %d do d.n = {}; d = d.n end\n"
           "fill(d); d.t = nil; sh.deep = top\n"
           "local p = sh.deep; for i = 2, %d do p = p.n end\n"
           "assert(not pcall(function() p.t = {} end), 'Lua stored a table past the bound')\n",
           fill_lua, THREADLOCAL_MAXDEPTH, THREADLOCAL_MAXDEPTH);
  ok = run_sh(L, "kinds", code);
  path[0] = S("deep");
  for (i = 1; i < THREADLOCAL_MAXDEPTH; i++) path[i] = S("n");
  path[THREADLOCAL_MAXDEPTH] = S("s");
  ok &= threadlocal_node_get(&root, path, THREADLOCAL_MAXDEPTH + 1, &v) == 0 &&
        is_str(&v, "a\0b", 3);
  ok &= threadlocal_node_child(&root, path, THREADLOCAL_MAXDEPTH, &n) == 0;
  ok &= get1(&n, S("i"), &v) == 0 && is_int(&v, -42) && get1(&n, S("t"), &v) == 0 &&
        v.type == THREADLOCAL_NIL;
  ok &= threadlocal_node_newtable(&n, (k = S("t"), &k), NULL) == THREADLOCAL_ERRDEPTH &&
        get1(&n, S("t"), &v) == 0 && v.type == THREADLOCAL_NIL;
  check(ok, "Lua's values at the nesting bound are what C reads (a path of MAXDEPTH + 1 keys); "
            "no table goes below it from C either");
  path[THREADLOCAL_MAXDEPTH] = S("n");
  ok = threadlocal_node_child(&root, path, THREADLOCAL_MAXDEPTH + 1, &n) == THREADLOCAL_ERRTYPE;
  path[1] = S("nothing");
  ok &= threadlocal_node_get(&root, path, THREADLOCAL_MAXDEPTH + 1, &v) == 0 &&
        v.type == THREADLOCAL_NIL;
  path[1] = S("n");
  path[2] = I(1);
  ok &= threadlocal_node_get(&root, path, 3, &v) == 0 && v.type == THREADLOCAL_NIL;
  path[0] = S("t");
  path[1] = S("s");
  path[2] = S("x");
  ok &= threadlocal_node_get(&root, path, 3, &v) == THREADLOCAL_ERRTYPE &&
        threadlocal_node_child(&root, path, 2, &n) == THREADLOCAL_ERRTYPE &&
        threadlocal_node_child(&root, (k = S("nothing"), &k), 1, &n) == THREADLOCAL_ERRTYPE;
  check(ok, "an absent key on a path reads as nil; a scalar on it, or a child of a "
            "non-table, is ERRTYPE");

  /* C -> Lua, depth 1 and at the bound */
  ok = threadlocal_node_newtable(&root, (k = S("c"), &k), &n) == 0 && fill_kinds(&n, 1);
  snprintf(code, sizeof code, "%s check(sh.c)", check_lua);
  ok &= run_sh(L, "kinds", code) && check_kinds(&n);
  check(ok, "every value kind set in C at depth 1 is what Lua reads");
  ok = threadlocal_node_newtable(&root, (k = S("cdeep"), &k), &deep[1]) == 0;
  for (i = 2; ok && i <= THREADLOCAL_MAXDEPTH; i++)
    ok = threadlocal_node_newtable(&deep[i - 1], (k = S("n"), &k), &deep[i]) == 0;
  ok &= fill_kinds(&deep[THREADLOCAL_MAXDEPTH], 0);
  ok &= threadlocal_node_newtable(&deep[THREADLOCAL_MAXDEPTH], (k = S("t"), &k), &n) ==
        THREADLOCAL_ERRDEPTH;
  ok &= threadlocal_node_newtable(&deep[THREADLOCAL_MAXDEPTH - 1], (k = S("x"), &k), &n) ==
        THREADLOCAL_OK;
  snprintf(code, sizeof code,
           "local function check(t)\n"
           "  assert(t.b == true and t.i == -42 and t.f == 0.5 and t.s == 'a\\0b' and t.p == P)\n"
           "  assert(t[1] == 'one' and t.gone == nil and t.t == nil)\n"
           "end\n"
           "local p = sh.cdeep; for i = 2, %d do p = p.n end; check(p)\n"
           "assert(not pcall(function() p.t = {} end))\n",
           THREADLOCAL_MAXDEPTH);
  ok &= run_sh(L, "kinds", code);
  check(ok, "values set in C at the nesting bound are what Lua reads; a table below it is "
            "ERRDEPTH from C as Lua refuses it");
  threadlocal_clear(sh);
  lua_close(L);
}

/* Runs f(arg) on a new thread and waits for it. */
static void on_thread(void *(*f)(void *), void *arg) {
  pthread_t th;
  pthread_create(&th, NULL, f, arg);
  pthread_join(th, NULL);
}

/* Every call on a node of another thread returns ERRTHREAD; the root node
** of the same shared local works there, on that thread's own fields. */
typedef struct foreign {
  threadlocal_shared *sh;
  threadlocal_node node;
  threadlocal_iter it;
  int ok, rootok;
} foreign;

static void *use_foreign(void *p) {
  foreign *f = (foreign *)p;
  threadlocal_node n, root;
  threadlocal_value k = S("x"), v = I(1);
  threadlocal_iter it;
  int ok = 1;
  ok &= threadlocal_node_get(&f->node, &k, 1, &v) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_node_child(&f->node, &k, 1, &n) == THREADLOCAL_ERRTHREAD;
  v = I(1);
  ok &= threadlocal_node_set(&f->node, &k, &v) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_node_set_pointer(&f->node, &k, NULL, count_dtor) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_node_delete(&f->node, &k) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_node_newtable(&f->node, &k, &n) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_node_iter(&f->node, &it) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_next(&f->it, &k, &v) == THREADLOCAL_ERRTHREAD;
  ok &= threadlocal_set_defaults(f->sh, &f->node) == THREADLOCAL_ERRTHREAD;
  f->ok = ok;
  threadlocal_root(f->sh, &root);
  k = S("x");
  f->rootok = get1(&root, k, &v) == 0 && v.type == THREADLOCAL_NIL &&
              threadlocal_node_set(&root, &k, (v = I(2), &v)) == 0 &&
              get1(&root, k, &v) == 0 && is_int(&v, 2);
  return NULL;
}

static void test_stale_foreign(void) {
  threadlocal_shared *sh;
  threadlocal_node root, n, n2, saved;
  threadlocal_value k, v;
  lua_State *L = new_state(NULL);
  foreign f;
  int ok;
  threadlocal_shared_open_cstr("stale", &sh);
  threadlocal_root(sh, &root);
  run_sh(L, "stale", "sh.t = { x = 1, u = { y = 2 } }");
  k = S("t");
  ok = threadlocal_node_child(&root, &k, 1, &n) == 0 && get1(&n, S("x"), &v) == 0 && is_int(&v, 1);
  ok &= run_sh(L, "stale", "sh.t = { x = 3 }");
  ok &= get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE;
  v = I(5);
  ok &= threadlocal_node_set(&n, (k = S("x"), &k), &v) == THREADLOCAL_ERRSTALE &&
        run_sh(L, "stale", "assert(sh.t.x == 3 and sh.x == nil)");
  check(ok, "a node whose table Lua replaced is stale (ERRSTALE) and writes nothing");
  k = S("t");
  threadlocal_node_child(&root, &k, 1, &n);
  threadlocal_node_delete(&root, &k);
  ok = get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE;
  run_sh(L, "stale", "sh.t = { x = 1 }");
  threadlocal_node_child(&root, &k, 1, &n);
  threadlocal_node_newtable(&root, &k, &n2);
  ok &= get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE && get1(&n2, S("x"), &v) == 0 &&
        v.type == THREADLOCAL_NIL;
  threadlocal_node_child(&root, &k, 1, &n);
  threadlocal_clear(sh);
  ok &= get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE;
  run_sh(L, "stale", "sh.t = { x = 1 }");
  threadlocal_node_child(&root, &k, 1, &n);
  run_sh(L, "stale", "threadlocal.clear(sh)");
  ok &= get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE;
  run_sh(L, "stale", "sh.t = { x = 1 }");
  threadlocal_node_child(&root, &k, 1, &n);
  run_sh(L, "stale", "sh.t = nil");
  ok &= get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE;
  /* many tables made and freed since: the slot is reused, the node stays stale */
  run_sh(L, "stale", "for i = 1, 200 do sh.t = { i } end");
  ok &= get1(&n, I(1), &v) == THREADLOCAL_ERRSTALE;
  check(ok, "a node goes stale when its table is deleted, replaced, or cleared, from C or Lua, "
            "and stays stale when its slot is reused");
  {
    threadlocal_snapshot *snap = NULL, *own = NULL, *job = NULL;
    run_sh(L, "stale", "sh.t = { x = 1 }");
    threadlocal_node_child(&root, (k = S("t"), &k), 1, &n);
    ok = threadlocal_snapshot_capture(&sh, 1, &snap) == 0 &&
         threadlocal_snapshot_install(snap, &own) == 0 &&
         get1(&n, S("x"), &v) == THREADLOCAL_ERRSTALE &&
         threadlocal_node_child(&root, &k, 1, &n2) == 0 && get1(&n2, S("x"), &v) == 0 &&
         is_int(&v, 1) && threadlocal_snapshot_install(own, &job) == 0 &&
         get1(&n2, S("x"), &v) == THREADLOCAL_ERRSTALE;
    threadlocal_snapshot_free(job);
    check(ok, "installing a snapshot replaces the fields: nodes into the old ones go stale");
  }
  run_sh(L, "stale", "sh.t = { x = 1 }");
  threadlocal_node_child(&root, &k, 1, &n);
  ok = threadlocal_node_set(&root, (k = S("other"), &k), (v = I(1), &v)) == 0 &&
       run_sh(L, "stale", "sh.t.x = 9; sh.t.new = 1") && get1(&n, S("x"), &v) == 0 &&
       is_int(&v, 9);
  check(ok, "writes into a node's table or next to it leave the node valid");
  k = S("t");
  threadlocal_node_child(&root, &k, 1, &n);
  saved = n;
  f.sh = sh;
  f.node = n;
  threadlocal_node_iter(&n, &f.it);
  on_thread(use_foreign, &f);
  check(f.ok, "every call on a node or walk of another thread returns ERRTHREAD");
  check(f.rootok && get1(&root, S("x"), &v) == 0 && v.type == THREADLOCAL_NIL,
        "a root node works on any thread, each on its own fields");
  threadlocal_release();
  ok = get1(&saved, S("x"), &v) == THREADLOCAL_ERRTHREAD &&
       threadlocal_node_child(&root, &k, 1, &n) == THREADLOCAL_ERRTYPE;
  check(ok, "after threadlocal_release the thread's old nodes give ERRTHREAD");
  lua_close(L);
}

/* The keys of a walk, as "k1 k2 ..." (integers as #n, booleans as T/F). */
static int walk(const threadlocal_node *n, char *out, size_t size) {
  threadlocal_iter it;
  threadlocal_value k, v;
  size_t used = 0;
  int rc;
  out[0] = '\0';
  if ((rc = threadlocal_node_iter(n, &it)) != THREADLOCAL_OK) return rc;
  while ((rc = threadlocal_next(&it, &k, &v)) == THREADLOCAL_OK && k.type != THREADLOCAL_NIL) {
    if (k.type == THREADLOCAL_STRING)
      used += (size_t)snprintf(out + used, size - used, "%s ", k.u.string.ptr);
    else if (k.type == THREADLOCAL_INTEGER)
      used += (size_t)snprintf(out + used, size - used, "#%lld ", (long long)k.u.integer);
    else if (k.type == THREADLOCAL_FLOAT)
      used += (size_t)snprintf(out + used, size - used, "%g ", k.u.number);
    else
      used += (size_t)snprintf(out + used, size - used, "%s ", k.u.boolean ? "T" : "F");
    if (used >= size) return -1;
  }
  return rc;
}

static void test_iteration(void) {
  threadlocal_shared *sh, *empty;
  threadlocal_node root, n;
  threadlocal_iter it;
  threadlocal_value k, v;
  lua_State *L = new_state(NULL);
  char got[512], lua[512];
  int ok, i, count;
  threadlocal_shared_open_cstr("walk", &sh);
  threadlocal_shared_open_cstr("walk.empty", &empty);
  threadlocal_root(sh, &root);
  run_sh(L, "walk", "sh.a = 1; sh.b = 2; sh[1] = 3; sh[true] = 4; sh[2.5] = 5\n"
                    "sh.b = nil; sh.b = 6; sh.a = 7; sh.t = {}; sh.t.z = 1; sh.t.y = { 1 }");
  ok = walk(&root, got, sizeof got) == 0 && strcmp(got, "a #1 T 2.5 b t ") == 0;
  check(ok, "a walk goes in the order keys were first stored; one deleted and stored again "
            "goes last");
  if (!ok) printf("# got '%s'\n", got);
  ok = run_sh(L, "walk", "local s = ''\n"
                         "for k in pairs(threadlocal.fields(sh)) do end\n"
                         "for k in (debug.getmetatable(sh).__pairs)(sh) do\n"
                         "  s = s .. (type(k) == 'number' and math.floor(k) == k and '#' .. k or\n"
                         "           type(k) == 'boolean' and (k and 'T' or 'F') or tostring(k)) .. ' '\n"
                         "end\n"
                         "walked = s");
  lua_getglobal(L, "walked");
  snprintf(lua, sizeof lua, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
  check(ok && strcmp(got, lua) == 0, "Lua's pairs walks the same order");
  if (strcmp(got, lua) != 0) printf("# C '%s', Lua '%s'\n", got, lua);
  /* values come with their keys; a nested table walks too */
  ok = threadlocal_node_iter(&root, &it) == 0 && threadlocal_next(&it, &k, &v) == 0 &&
       is_str(&k, "a", 1) && is_int(&v, 7) && threadlocal_next(&it, &k, NULL) == 0 &&
       is_int(&k, 1);
  threadlocal_node_child(&root, (k = S("t"), &k), 1, &n);
  ok &= walk(&n, got, sizeof got) == 0 && strcmp(got, "z y ") == 0;
  check(ok, "a walk gives each value with its key (value may be NULL), and walks nested tables");
  /* the end stays the end */
  threadlocal_node_iter(&n, &it);
  for (i = 0; i < 2; i++) threadlocal_next(&it, &k, &v);
  ok = threadlocal_next(&it, &k, &v) == 0 && k.type == THREADLOCAL_NIL &&
       v.type == THREADLOCAL_NIL && threadlocal_next(&it, &k, &v) == 0 &&
       k.type == THREADLOCAL_NIL;
  ok &= threadlocal_root(empty, &n) == 0 && threadlocal_node_iter(&n, &it) == 0 &&
        threadlocal_next(&it, &k, &v) == 0 && k.type == THREADLOCAL_NIL;
  check(ok, "the end of a walk is a NIL key, again and again; a root with no fields walks nothing");
  /* changes during a walk */
  ok = 1;
  for (i = 0; i < 6; i++) {
    threadlocal_root(sh, &n);
    threadlocal_node_iter(&n, &it);
    threadlocal_next(&it, &k, &v);
    switch (i) {
      case 0: threadlocal_node_set(&n, (k = S("new"), &k), (v = I(1), &v)); break;
      case 1: threadlocal_node_set(&n, (k = S("a"), &k), (v = I(7), &v)); break; /* equal */
      case 2: threadlocal_node_delete(&n, (k = S("new"), &k)); break;
      case 3: run_sh(L, "walk", "sh.a = 8"); break;
      case 4: threadlocal_set_integer(sh, "a", 9); break;
      default: threadlocal_clear(sh); break;
    }
    ok &= threadlocal_next(&it, &k, &v) == THREADLOCAL_ERRSTALE;
    ok &= threadlocal_next(&it, &k, &v) == THREADLOCAL_ERRSTALE;
  }
  check(ok, "any write to the walked table (set, equal set, delete, from Lua, clear) makes the "
            "next step ERRSTALE");
  run_sh(L, "walk", "sh.t = {}; sh.t.z = 1; sh.t.y = { 1 }; sh.u = 1");
  threadlocal_node_iter(&root, &it);
  threadlocal_next(&it, &k, &v);
  run_sh(L, "walk", "sh.t.z = 2; sh.t.y[2] = 2");
  ok = threadlocal_next(&it, &k, &v) == 0 && is_str(&k, "u", 1);
  check(ok, "writes to tables nested in the walked one do not end the walk");
  /* a large table, rebuilt by deletes and inserts during many walks */
  threadlocal_clear(sh);
  threadlocal_root(sh, &root);
  for (i = 0; i < 1000; i++) threadlocal_node_set(&root, (k = I(i), &k), (v = I(i), &v));
  ok = 1;
  for (i = 0; i < 1000; i += 2) {
    int rc;
    threadlocal_node_iter(&root, &it);
    count = 0;
    while ((rc = threadlocal_next(&it, &k, &v)) == 0 && k.type != THREADLOCAL_NIL) {
      count++;
      if (count == 3) threadlocal_node_delete(&root, &k); /* ends the walk */
    }
    ok &= rc == THREADLOCAL_ERRSTALE && count == 3;
    threadlocal_node_set(&root, (k = I(5000 + i), &k), (v = I(i), &v));
  }
  threadlocal_node_iter(&root, &it);
  count = 0;
  while (threadlocal_next(&it, &k, &v) == 0 && k.type != THREADLOCAL_NIL) count++;
  check(ok && count == 1000, "walks over a table rebuilt by deletes and inserts stop cleanly");
  memset(&it, 0, sizeof it);
  ok = threadlocal_node_iter(NULL, &it) == THREADLOCAL_ERRARG &&
       threadlocal_node_iter(&root, NULL) == THREADLOCAL_ERRARG &&
       threadlocal_next(NULL, &k, &v) == THREADLOCAL_ERRARG &&
       threadlocal_next(&it, &k, &v) == THREADLOCAL_ERRARG &&
       (threadlocal_node_iter(&root, &it), threadlocal_next(&it, NULL, &v)) == THREADLOCAL_ERRARG;
  check(ok, "walk calls refuse NULL and a walk never started");
  threadlocal_clear(sh);
  lua_close(L);
}

/* Defaults from C, read on new threads from C and Lua. */
typedef struct newthread {
  threadlocal_shared *sh;
  int ok;
} newthread;

static void *read_c_defaults(void *p) {
  newthread *t = (newthread *)p;
  threadlocal_node root;
  threadlocal_value path[2], v;
  lua_State *L;
  threadlocal_root(t->sh, &root);
  path[0] = S("opts");
  path[1] = S("retries");
  t->ok = threadlocal_node_get(&root, path, 2, &v) == 0 && is_int(&v, 3) &&
          threadlocal_get(t->sh, "db", &v) == 0 && is_str(&v, "primary", 7) &&
          threadlocal_get(t->sh, "conn", &v) == 0 && v.u.pointer == &dtor_tags[61];
  L = new_state(NULL);
  t->ok &= run(L, "local sh = threadlocal.shared('cdefaults')\n"
                  "assert(sh.db == 'primary' and sh.opts.retries == 3 and sh[1] == true)\n"
                  "assert(not pcall(threadlocal.shared, 'cdefaults', { db = 'other' }))\n"
                  "threadlocal.shared('cdefaults', { db = 'primary', opts = { retries = 3 },\n"
                  "  [1] = true, conn = threadlocal.fields(sh).conn })\n"
                  "sh.db = 'mine'\n");
  lua_close(L);
  return NULL; /* its copy of conn carries no destructor */
}

static void test_defaults(void) {
  threadlocal_shared *sh, *scratch, *lua_first;
  threadlocal_node root, n, stale;
  threadlocal_value k, v;
  lua_State *L = new_state(NULL);
  newthread t;
  threadlocal_iter it_unused;
  int ok;
  threadlocal_shared_open_cstr("cdefaults", &sh);
  threadlocal_shared_open_cstr("cdefaults.scratch", &scratch);
  threadlocal_root(scratch, &root);
  threadlocal_node_set(&root, (k = S("db"), &k), (v = S("primary"), &v));
  threadlocal_node_newtable(&root, (k = S("opts"), &k), &n);
  threadlocal_node_set(&n, (k = S("retries"), &k), (v = I(3), &v));
  threadlocal_node_set(&root, (k = I(1), &k), (v = threadlocal_boolean(1), &v));
  threadlocal_node_set_pointer(&root, (k = S("conn"), &k), &dtor_tags[61], count_dtor);
  /* a stale node gives no defaults, and leaves the local free to get them */
  threadlocal_node_newtable(&root, (k = S("tmp"), &k), &stale);
  threadlocal_node_delete(&root, &k);
  ok = threadlocal_set_defaults(sh, &stale) == THREADLOCAL_ERRSTALE &&
       threadlocal_set_defaults(NULL, &root) == THREADLOCAL_ERRARG &&
       threadlocal_set_defaults(sh, NULL) == THREADLOCAL_ERRARG;
  check(ok, "set_defaults refuses NULL and stale nodes");
  ok = threadlocal_set_defaults(sh, &root) == THREADLOCAL_OK &&
       threadlocal_set_defaults(sh, &root) == THREADLOCAL_OK;
  check(ok, "set_defaults gives a shared local its defaults; an equal repeat is fine");
  threadlocal_node_set(&n, (k = S("retries"), &k), (v = I(4), &v));
  ok = threadlocal_set_defaults(sh, &root) == THREADLOCAL_ERRDEFAULTS;
  threadlocal_node_set(&n, (k = S("retries"), &k), (v = threadlocal_float(3.0), &v));
  ok &= threadlocal_set_defaults(sh, &root) == THREADLOCAL_ERRDEFAULTS; /* 3.0 is not 3 */
  threadlocal_node_set(&n, (k = S("retries"), &k), (v = I(3), &v));
  ok &= threadlocal_set_defaults(sh, &n) == THREADLOCAL_ERRDEFAULTS &&
        threadlocal_set_defaults(sh, &root) == THREADLOCAL_OK;
  check(ok, "other defaults are refused with ERRDEFAULTS, the first stay");
  t.sh = sh;
  t.ok = 0;
  on_thread(read_c_defaults, &t);
  check(t.ok && calls(61) == 0,
        "a new thread starts from C's defaults, in C and Lua; Lua's own rules apply to them; "
        "pointers in them carry no destructor");
  ok = run(L, "threadlocal.shared('cdefaults.lua', { a = { 1, 'x' }, b = 2.5 })");
  threadlocal_shared_open_cstr("cdefaults.lua", &lua_first);
  threadlocal_clear(scratch);
  threadlocal_node_newtable(&root, (k = S("a"), &k), &n);
  threadlocal_node_set(&n, (k = I(1), &k), (v = I(1), &v));
  threadlocal_node_set(&n, (k = I(2), &k), (v = S("x"), &v));
  threadlocal_node_set(&root, (k = S("b"), &k), (v = threadlocal_float(2.5), &v));
  ok &= threadlocal_set_defaults(lua_first, &root) == THREADLOCAL_OK;
  threadlocal_node_set(&root, (k = S("c"), &k), (v = I(0), &v));
  ok &= threadlocal_set_defaults(lua_first, &root) == THREADLOCAL_ERRDEFAULTS;
  check(ok, "defaults given in Lua: C may repeat them, not change them");
  {
    threadlocal_shared *e, *none;
    threadlocal_shared_open_cstr("cdefaults.empty", &e);
    threadlocal_shared_open_cstr("cdefaults.none", &none);
    threadlocal_root(none, &n);
    ok = threadlocal_set_defaults(e, &n) == THREADLOCAL_OK &&
         threadlocal_set_defaults(e, &root) == THREADLOCAL_ERRDEFAULTS &&
         threadlocal_node_iter(&n, &it_unused) == 0;
    check(ok, "a root with no fields gives empty defaults, fixed as any others");
  }
  threadlocal_clear(scratch);
  check(calls(61) == 1, "the original pointer's destructor runs once, with the fields that hold it");
  lua_close(L);
}

int main(void) {
  int i;
  for (i = 0; i < 64; i++) atomic_init(&dtor_calls[i], 0);
  test_arguments();
  test_c_to_lua();
  dtor_case(1, "overwrite from C", undo_c_overwrite);
  dtor_case(2, "delete from C", undo_c_delete);
  dtor_case(3, "clear from C", undo_c_clear);
  dtor_case(4, "release", undo_release);
  dtor_case(5, "overwrite from Lua", undo_lua_overwrite);
  dtor_case(6, "delete from Lua", undo_lua_delete);
  dtor_case(7, "clear from Lua", undo_lua_clear);
  test_threads();
  test_lifetimes();
  test_snapshots();
  test_snapshot_twice();
  test_scope_dtors();
  test_release_in_init();
  test_open_cstr();
  test_strerror();
  test_keys();
  test_values();
  test_stale_foreign();
  test_iteration();
  test_defaults();
  return exit_status();
}
