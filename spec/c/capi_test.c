/*
** capi_test: drives threadlocal's C API directly, from several threads, and
** checks it against Lua states on the same threads.  Prints one TAP line per
** check; exits non-zero if any failed.
*/
#define _POSIX_C_SOURCE 200809L

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
  return exit_status();
}
