/*
** fork_test: fork, as README's Guarantees state it.  Four threads hold
** shared values (with counted C destructors) and Local values (with counted
** __gc) in one state; the main thread forks while the others are alive.  The
** child must keep the main thread's values, see none of the others', free
** their shared values (destructors run once, in the child) and collect their
** Local values.
** Prints TAP lines; exits non-zero if any check failed.
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#define CTEST_NAME "fork"
#include "ctest.h"

#define NTHREADS 3

static int dtor_calls;
static int tags[NTHREADS + 1];
static lua_State *L;
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t set_done, may_exit;


static void count_dtor(void *p) {
  (void)p;
  dtor_calls++;
}


/* Stores this thread's values: a shared field with a destructor and a
** Local value with a counted __gc, made off the main stack. */
static void store(int me) {
  threadlocal_shared *sh;
  char code[256];
  threadlocal_shared_open("fork", 4, &sh);
  threadlocal_set_integer(sh, "me", me);
  threadlocal_set_pointer(sh, "p", &tags[me], count_dtor);
  snprintf(code, sizeof code,
           "coroutine.wrap(function() tl.v = setmetatable({ me = %d }, gc_mt) end)()", me);
  pthread_mutex_lock(&state_lock);
  run(L, code);
  pthread_mutex_unlock(&state_lock);
}

static void *worker(void *p) {
  store((int)(intptr_t)p);
  pthread_barrier_wait(&set_done);
  pthread_barrier_wait(&may_exit); /* alive while the main thread forks */
  return NULL;
}

static int child(void) {
  threadlocal_shared *sh;
  threadlocal_value v;
  int ok;
  threadlocal_shared_open("fork", 4, &sh);
  check(dtor_calls == NTHREADS, "the other threads' shared values are freed in the child (destructors ran once each)");
  ok = threadlocal_get(sh, "me", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_INTEGER &&
       v.u.integer == 0;
  check(ok, "the child keeps the forking thread's shared values");
  check(run(L, "assert(tl.v.me == 0)\n"
            "local n = 0\n"
            "for id, f in threadlocal.threads(tl) do n = n + 1; assert(f.v.me == 0) end\n"
            "assert(n == 1, n .. ' threads listed')\n"),
        "the child keeps the forking thread's Local values and lists no other thread");
  check(run(L, "collectgarbage(); collectgarbage()\n"
            "assert(collected == 3, collected .. ' collected')\n"),
        "the other threads' Local values are collected in the child within two cycles");
  threadlocal_set_integer(sh, "after", 1);
  check(threadlocal_get(sh, "after", &v) == THREADLOCAL_OK && v.u.integer == 1,
        "the module works in the child");
  lua_close(L);
  check(dtor_calls == NTHREADS, "closing a state runs no shared destructor: shared values outlive states");
  return exit_status();
}

int main(void) {
  pthread_t th[NTHREADS];
  int i, status;
  pid_t pid;
  L = new_state(NULL);
  run(L, "tl = threadlocal.new()\n"
      "collected = 0\n"
      "gc_mt = { __gc = function() collected = collected + 1 end }\n");
  store(0);
  pthread_barrier_init(&set_done, NULL, NTHREADS + 1);
  pthread_barrier_init(&may_exit, NULL, NTHREADS + 1);
  for (i = 1; i <= NTHREADS; i++) pthread_create(&th[i - 1], NULL, worker, (void *)(intptr_t)i);
  pthread_barrier_wait(&set_done);
  fflush(stdout);
  pid = fork();
  if (pid == 0) _exit(child());
  waitpid(pid, &status, 0);
  check(pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exits cleanly");
  check(dtor_calls == 0, "fork runs no destructor in the parent");
  pthread_barrier_wait(&may_exit);
  for (i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  check(dtor_calls == NTHREADS, "the parent's threads run their own destructors when they exit");
  lua_close(L);
  return exit_status();
}
