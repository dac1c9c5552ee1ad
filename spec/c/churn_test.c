/*
** churn_test [THREADS]: THREADS (default 100000) threads, one after another,
** each take the one Lua state (handed between them under a lock) and store a
** string and a table (with a counted __gc) in a Local and in a shared local,
** plus a pointer with a counted C destructor through the C API, then exit.
** Meanwhile another thread with its own state keeps reading its own values.
** Checks that every __gc and destructor ran exactly once, that the reader
** never saw a wrong value, and that RSS after collection is within 1 MiB of
** where it started.  Prints TAP lines (and the time taken, as a comment:
** tests assert no timings); exits non-zero if any check failed.
*/
#define _GNU_SOURCE /* malloc_trim */

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CTEST_NAME "churn"
#include "ctest.h"

static lua_State *L;
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int dtors, done, reader_errors;
static atomic_long reads;


static void count_dtor(void *p) {
  (void)p;
  atomic_fetch_add(&dtors, 1);
}



static void *churner(void *p) {
  threadlocal_shared *sh;
  static int tag;
  (void)p;
  threadlocal_shared_open("churn", 5, &sh);
  threadlocal_set_pointer(sh, "p", &tag, count_dtor);
  pthread_mutex_lock(&state_lock);
  lua_getglobal(L, "touch");
  if (lua_pcall(L, 0, 0, 0) != 0) {
    printf("# lua: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  pthread_mutex_unlock(&state_lock);
  return NULL;
}

static void *reader(void *p) {
  lua_State *S = new_state(NULL);
  (void)p;
  run(S, "sh = threadlocal.shared('churn.reader'); sh.v = 'mine'; tl = threadlocal.new(); tl.v = 42\n"
         "function read() return sh.v == 'mine' and tl.v == 42 end");
  while (!atomic_load(&done)) {
    lua_getglobal(S, "read");
    lua_call(S, 0, 1);
    if (!lua_toboolean(S, -1)) atomic_fetch_add(&reader_errors, 1);
    lua_pop(S, 1);
    atomic_fetch_add(&reads, 1);
  }
  lua_close(S);
  return NULL;
}

static long rss_kib(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL || fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  if (f != NULL) fclose(f);
  return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void churn(int n) {
  int i;
  for (i = 0; i < n; i++) {
    pthread_t th;
    if (pthread_create(&th, NULL, churner, NULL) != 0) {
      printf("# cannot create thread %d\n", i);
      check(0, "every churning thread could be created");
      return;
    }
    pthread_join(th, NULL);
  }
}

static void settle(void) {
  run(L, "collectgarbage(); collectgarbage()");
  malloc_trim(0);
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 100000, warm = 2000;
  long before, after;
  struct timespec t0, t1;
  double secs;
  pthread_t rd;
  char msg[200];
  L = new_state(NULL);
  run(L, "tl = threadlocal.new(); sh = threadlocal.shared('churn')\n"
         "collected = 0\n"
         "local gc_mt = { __gc = function() collected = collected + 1 end }\n"
         "local i = 0\n"
         "function touch()\n"
         "  i = i + 1\n"
         "  coroutine.wrap(function()\n" /* off the main stack: see spec/support.lua */
         "    tl.s = 'string ' .. i\n"
         "    tl.t = setmetatable({ i }, gc_mt)\n"
         "  end)()\n"
         "  sh.s = 'string ' .. i\n"
         "  sh.t = { i, { i } }\n"
         "end\n");
  pthread_create(&rd, NULL, reader, NULL);
  churn(warm);
  settle();
  before = rss_kib();
  atomic_store(&dtors, 0);
  run(L, "collected = 0");
  clock_gettime(CLOCK_MONOTONIC, &t0);
  churn(n);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  settle();
  after = rss_kib();
  atomic_store(&done, 1);
  pthread_join(rd, NULL);
  secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("# %d threads in %.1f s (%.0f threads/s); RSS %ld -> %ld KiB; %ld reads by the reader\n",
         n, secs, n / secs, before, after, atomic_load(&reads));
  lua_getglobal(L, "collected");
  snprintf(msg, sizeof msg, "every Local value's __gc ran exactly once (%d of %d)",
           (int)lua_tointeger(L, -1), n);
  check(lua_tointeger(L, -1) == n, msg);
  lua_pop(L, 1);
  snprintf(msg, sizeof msg, "every C destructor ran exactly once (%d of %d)", atomic_load(&dtors), n);
  check(atomic_load(&dtors) == n, msg);
  check(atomic_load(&reader_errors) == 0 && atomic_load(&reads) > 0,
        "the reader on its own state saw only its own values throughout");
  snprintf(msg, sizeof msg, "RSS after collection within 1 MiB of the start (%+ld KiB)", after - before);
  check(after - before <= 1024, msg);
  lua_close(L);
  return exit_status();
}
