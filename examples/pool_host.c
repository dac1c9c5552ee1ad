/*
** pool_host: the reference embedding host for threadlocal's C API.
**
** A pool of NWORKERS pthreads serves NJOBS jobs, dealt round-robin (worker w
** runs jobs w, w + NWORKERS, ...), so the output is the same every run.  Each job
** runs in a fresh, short-lived lua_State created on the worker and closed
** after the job (examples/job.lua).  When a worker starts, the host puts the
** worker's context into the shared local "worker" through the C API: its
** index, and a connection handle (a pointer with a destructor, which
** threadlocal runs when the worker thread exits).  Every job, in whatever
** state, reads that context.
**
** Requests arrive on another thread, the acceptor (main), which runs
** examples/accept.lua: for each job it sets the request's context (the
** shared local "request") in a scope and calls host.submit, which captures
** it into a snapshot (threadlocal_snapshot_capture) that travels with the
** job.  The worker installs the snapshot before the job
** (threadlocal_snapshot_install), so the job reads its request's context,
** also from the coroutines it starts with threadlocal.context, and puts
** its own fields back after (install what was handed back, free the job's).
**
** The jobs use examples/orm.lua, whose current database lives in a shared
** local (the Peewee case).  Job SWITCH_JOB tells whichever worker runs it to
** switch to the "archive" database; that worker keeps writing there in its
** later jobs, while the other workers keep writing to "primary".  The host
** is the database server: host.insert records which worker wrote each row
** (by the host's own bookkeeping, not what Lua says) and the host checks
** at the end that no write went to a wrong database.
**
**   usage: pool_host EXAMPLES_DIR
*/
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "threadlocal.h"

#define NWORKERS 4
#define NJOBS 40
#define SWITCH_JOB 10

typedef struct pool_conn { /* what a worker's connection handle would hold */
  int worker;
} pool_conn;

typedef struct pool_row {
  int worker, job, archive; /* archive: 0 = primary, 1 = archive */
} pool_row;

static const char *pool_dir;
static char pool_path[1024];

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pool_row pool_rows[NJOBS];
static int pool_nrows, pool_errors, pool_conns_closed;
static pthread_barrier_t pool_start; /* every worker has its context */
static threadlocal_snapshot *pool_requests[NJOBS + 1]; /* by job: its request */
static int pool_handed, pool_spans; /* jobs that saw their request, coroutines */

static _Thread_local int pool_worker; /* the host's own idea of who runs */

static void pool_conn_close(void *p) { /* runs on the worker as it exits */
  pthread_mutex_lock(&pool_lock);
  pool_conns_closed++;
  pthread_mutex_unlock(&pool_lock);
  free(p);
}

/* host.insert(database, table, worker, job) */
static int pool_insert(lua_State *L) {
  const char *db = luaL_checkstring(L, 1);
  int worker = (int)luaL_checkinteger(L, 3), job = (int)luaL_checkinteger(L, 4);
  luaL_checkstring(L, 2);
  pthread_mutex_lock(&pool_lock);
  if (worker != pool_worker) pool_errors++; /* Lua saw another worker's context */
  if (pool_nrows < NJOBS) {
    pool_row *r = &pool_rows[pool_nrows++];
    r->worker = pool_worker;
    r->job = job;
    r->archive = strcmp(db, "archive") == 0;
    if (!r->archive && strcmp(db, "primary") != 0) pool_errors++;
  }
  pthread_mutex_unlock(&pool_lock);
  return 0;
}

/* host.submit(job), on the acceptor: the request context goes with the job. */
static int pool_submit(lua_State *L) {
  int job = (int)luaL_checkinteger(L, 1);
  threadlocal_shared *req;
  luaL_argcheck(L, job >= 1 && job <= NJOBS && pool_requests[job] == NULL, 1, "bad job");
  if (threadlocal_shared_open("request", 7, &req) != THREADLOCAL_OK ||
      threadlocal_snapshot_capture(&req, 1, &pool_requests[job]) != THREADLOCAL_OK)
    return luaL_error(L, "pool_host: cannot capture the request of job %d", job);
  return 0;
}

/* host.seen(job, request id, coroutines that kept their span), from a job. */
static int pool_seen(lua_State *L) {
  int job = (int)luaL_checkinteger(L, 1), id = (int)luaL_checkinteger(L, 2);
  int spans = (int)luaL_checkinteger(L, 3);
  pthread_mutex_lock(&pool_lock);
  if (id == job) pool_handed++; else pool_errors++;
  pool_spans += spans;
  pthread_mutex_unlock(&pool_lock);
  return 0;
}

/* A fresh state whose require "threadlocal" opens the linked-in module, with
** the host's functions in the global `host`; NULL when out of memory. */
static lua_State *pool_new_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  lua_getglobal(L, "package"); /* require "threadlocal" opens the linked-in module */
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_threadlocal);
  lua_setfield(L, -2, "threadlocal");
  lua_pop(L, 1);
  lua_pushstring(L, pool_path);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, pool_insert);
  lua_setfield(L, -2, "insert");
  lua_pushcfunction(L, pool_submit);
  lua_setfield(L, -2, "submit");
  lua_pushcfunction(L, pool_seen);
  lua_setfield(L, -2, "seen");
  lua_setglobal(L, "host");
  return L;
}

/* Runs one job in a fresh state, closed after. */
static void pool_run_job(int job) {
  char script[1100];
  lua_State *L = pool_new_state();
  if (L == NULL) {
    pool_errors++;
    return;
  }
  snprintf(script, sizeof script, "%s/job.lua", pool_dir);
  if (luaL_loadfile(L, script) == 0) {
    lua_pushinteger(L, job);
    if (job == SWITCH_JOB)
      lua_pushliteral(L, "archive");
    else
      lua_pushnil(L);
    if (lua_pcall(L, 2, 0, 0) == 0) {
      lua_close(L);
      return;
    }
  }
  fprintf(stderr, "pool_host: job %d: %s\n", job, lua_tostring(L, -1));
  pthread_mutex_lock(&pool_lock);
  pool_errors++;
  pthread_mutex_unlock(&pool_lock);
  lua_close(L);
}

/* After a job: the worker's own request fields are back, the job's gone. */
static int pool_own_back(threadlocal_shared *req) {
  threadlocal_value v, id;
  return threadlocal_get(req, "worker", &v) == THREADLOCAL_OK && v.type == THREADLOCAL_INTEGER &&
         v.u.integer == pool_worker && threadlocal_get(req, "id", &id) == THREADLOCAL_OK &&
         id.type == THREADLOCAL_NIL;
}

static void *pool_worker_main(void *p) {
  threadlocal_shared *ctx, *req;
  pool_conn *conn = (pool_conn *)malloc(sizeof *conn);
  int job;
  pool_worker = (int)(intptr_t)p;
  if (conn != NULL) conn->worker = pool_worker;
  if (conn == NULL || threadlocal_shared_open("worker", 6, &ctx) != THREADLOCAL_OK ||
      threadlocal_set_integer(ctx, "index", pool_worker) != THREADLOCAL_OK ||
      threadlocal_set_pointer(ctx, "conn", conn, pool_conn_close) != THREADLOCAL_OK ||
      threadlocal_shared_open("request", 7, &req) != THREADLOCAL_OK ||
      threadlocal_set_integer(req, "worker", pool_worker) != THREADLOCAL_OK) {
    free(conn);
    pthread_mutex_lock(&pool_lock);
    pool_errors++;
    pthread_mutex_unlock(&pool_lock);
    pthread_barrier_wait(&pool_start);
    return NULL;
  }
  pthread_barrier_wait(&pool_start);
  for (job = pool_worker; job <= NJOBS; job += NWORKERS) {
    threadlocal_snapshot *own, *done;
    if (threadlocal_snapshot_install(pool_requests[job], &own) != THREADLOCAL_OK) {
      pthread_mutex_lock(&pool_lock);
      pool_errors++;
      pthread_mutex_unlock(&pool_lock);
      continue;
    }
    pool_requests[job] = NULL; /* installed: the worker has it now */
    pool_run_job(job);
    if (threadlocal_snapshot_install(own, &done) != THREADLOCAL_OK || !pool_own_back(req)) {
      pthread_mutex_lock(&pool_lock);
      pool_errors++;
      pthread_mutex_unlock(&pool_lock);
      continue;
    }
    threadlocal_snapshot_free(done); /* the job's request context */
  }
  return NULL; /* threadlocal frees the context and closes conn now */
}

/* Checks that every worker wrote to primary until it switched, and to
** archive after; returns the number of rows that went to a wrong database. */
static int pool_check(int *switcher) {
  int w, i, wrong = 0;
  *switcher = 0;
  for (w = 1; w <= NWORKERS; w++) {
    int switched = 0;
    for (i = 0; i < pool_nrows; i++) { /* rows are in insertion order */
      const pool_row *r = &pool_rows[i];
      if (r->worker != w) continue;
      if (r->job == SWITCH_JOB) {
        switched = 1;
        *switcher = w;
      }
      if (r->archive != switched) wrong++;
    }
  }
  return wrong;
}

int main(int argc, char **argv) {
  pthread_t th[NWORKERS];
  int i, w, switcher, wrong, primary = 0, archive = 0;
  if (argc != 2) {
    fprintf(stderr, "usage: %s EXAMPLES_DIR\n", argv[0]);
    return 2;
  }
  pool_dir = argv[1];
  snprintf(pool_path, sizeof pool_path, "%s/?.lua", pool_dir);
  printf("pool: %d workers, %d jobs, a fresh Lua state per job\n", NWORKERS, NJOBS);
  fflush(stdout);
  { /* the acceptor: a request context per job, handed over as a snapshot */
    char script[1100];
    lua_State *L = pool_new_state();
    snprintf(script, sizeof script, "%s/accept.lua", pool_dir);
    if (L == NULL || luaL_loadfile(L, script) != 0 ||
        (lua_pushinteger(L, NJOBS), lua_pcall(L, 1, 0, 0)) != 0) {
      fprintf(stderr, "pool_host: accept: %s\n", L ? lua_tostring(L, -1) : "out of memory");
      return 1;
    }
    lua_close(L);
  }
  pthread_barrier_init(&pool_start, NULL, NWORKERS);
  for (i = 0; i < NWORKERS; i++)
    if (pthread_create(&th[i], NULL, pool_worker_main, (void *)(intptr_t)(i + 1)) != 0) {
      fprintf(stderr, "pool_host: cannot create a thread\n");
      return 1;
    }
  for (i = 0; i < NWORKERS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&pool_start);

  wrong = pool_check(&switcher);
  for (w = 1; w <= NWORKERS; w++) {
    int np = 0, na = 0;
    for (i = 0; i < pool_nrows; i++)
      if (pool_rows[i].worker == w) {
        if (pool_rows[i].archive) na++; else np++;
      }
    primary += np;
    archive += na;
    printf("worker %d: %2d rows in primary, %2d rows in archive\n", w, np, na);
  }
  printf("primary: %d rows, archive: %d rows, %d of %d jobs\n", primary, archive, pool_nrows, NJOBS);
  printf("worker contexts closed by threadlocal at thread exit: %d of %d\n", pool_conns_closed,
         NWORKERS);
  printf("request contexts handed from the acceptor to the workers: %d of %d jobs; "
         "coroutines that kept their own span: %d of %d\n", pool_handed, NJOBS, pool_spans,
         3 * NJOBS);
  if (wrong == 0 && pool_errors == 0 && switcher != 0 && pool_nrows == NJOBS &&
      pool_conns_closed == NWORKERS && pool_handed == NJOBS && pool_spans == 3 * NJOBS) {
    printf("ok: only worker %d switched, and no write went to a wrong database\n", switcher);
    return 0;
  }
  printf("FAILED: %d rows in a wrong database, %d errors\n", wrong, pool_errors);
  return 1;
}
